"""int8 post-training quantization: calibration, QDQ insertion, and the integer reference."""
