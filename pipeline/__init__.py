"""genbench: train, sweep and benchmark deep generative models of images with Ray and MLflow."""
VERSION = "0.1.0"
