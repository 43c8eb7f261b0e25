"""The Label Studio side of videoloop: the HTTP protocol, label configs, serving models."""
