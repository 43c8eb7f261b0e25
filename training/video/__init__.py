"""Videos in: fetching task media, sampling frames with PyAV, the clip caches, synthetic sets."""
