"""`runner serve`: translation over HTTP, on one machine (`serve`) or a Ray cluster (`runner.serve.ray_serve`)."""

from runner.serve.app import FP32, WARMUP_SECONDS, create_app, load_models, model_config, serve, warm_up
from runner.serve.upload import ApiError, Audio, ServeLimits, read_upload

__all__ = ["FP32", "WARMUP_SECONDS", "ApiError", "Audio", "ServeLimits", "create_app", "load_models", "model_config",
           "read_upload", "serve", "warm_up"]
