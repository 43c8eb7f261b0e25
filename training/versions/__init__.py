"""Published versions: the model store on disk and the current pointer every process reads."""
