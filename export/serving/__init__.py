"""depthscale_export.serving: an artifact behind a serving engine (docs/serving.md).

    from depthscale_export.serving.triton import write_repository
    write_repository("model-onnx", "model-repo")        # a Triton model repository

`depthscale-serve triton ARTIFACT OUT` is the command line. Writing Triton configs needs the `serve`
extra (tritonclient, for Triton's config schema).
"""
