"""Neural face swapping: recognizer, swapper families, enhancers and masks."""
