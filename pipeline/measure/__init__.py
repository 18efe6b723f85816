"""Measuring models: runtimes and their runners, the timing harness, model profiles (MACs, parameters), peak
memory, machine load, TFLite → ONNX for profiling, and `bench FILE`."""
