"""vllm-compose: a deployment spec → resolved deployment → compose file and vLLM argv.

Stages, one module each: spec (parse), resolve (presets, defaults, checks),
render (pure), write (disk), cli. fetch is the model-download entry point.
"""
