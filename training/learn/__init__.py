"""Learning from labelled clips: datasets, fitting, the quality gate, publishing a version."""
