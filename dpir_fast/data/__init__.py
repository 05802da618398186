"""Data: image files in and out (images.py), synthetic RAW bursts (burst.py), motion blur (blur.py),
MATLAB-bicubic resizing (degrade.py), training crops from image folders (datasets.py)."""

from .blur import (arc_kernel, blur, gaussian_kernel, motion_blur, random_motion_kernel, random_trajectory,
                   trajectory_kernel)
from .burst import (DEFAULT_CAMERA, Camera, SyntheticBurst, linear_to_srgb, mosaic, pack_raw, random_camera,
                    synthetic_burst, unpack_raw, unprocess)
from .datasets import CropStream, DatasetError, ImageFolder
from .degrade import bicubic_downsample, imresize
from .images import IMAGE_SUFFIXES, ImageInfo, ImageReadError, find_images, output_suffix, read_image, write_image

__all__ = ["Camera", "CropStream", "DEFAULT_CAMERA", "DatasetError", "IMAGE_SUFFIXES", "ImageFolder", "ImageInfo",
           "ImageReadError", "SyntheticBurst", "arc_kernel", "bicubic_downsample", "blur", "find_images",
           "gaussian_kernel", "imresize", "linear_to_srgb", "mosaic", "motion_blur", "output_suffix", "pack_raw",
           "random_camera", "random_motion_kernel", "random_trajectory", "read_image", "synthetic_burst",
           "trajectory_kernel", "unpack_raw", "unprocess", "write_image"]
