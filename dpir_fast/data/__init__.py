"""Data: image files in and out (images.py); degradations and datasets come with training."""

from .images import IMAGE_SUFFIXES, ImageInfo, ImageReadError, find_images, output_suffix, read_image, write_image

__all__ = ["IMAGE_SUFFIXES", "ImageInfo", "ImageReadError", "find_images", "output_suffix", "read_image",
           "write_image"]
