"""The pipeline's stages, one module each, in the order a run takes them: distill → calibrate → prune → export →
qat → bench → report → release. A stage reads what earlier stages recorded in the manifest and never imports a
later stage (tests/test_import_cycles.py checks it)."""
