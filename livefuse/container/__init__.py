"""Running livefuse in a container: what ``livefuse doctor`` checks there (a GPU passed in, a
driver new enough for the image's CUDA, /dev/shm, writable volumes, installed models), and the
signal handling a process needs when it is PID 1."""
