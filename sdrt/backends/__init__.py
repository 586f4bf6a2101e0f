"""Where models run: the Engine protocol and every backend that implements it.

    engine.py         Engine protocol, IOSpec, feed checks
    ort_options.py    ONNX Runtime session/provider options (pure), SessionSettings, backend names
    ort_engine.py     OrtEngine: one ONNX Runtime engine for every provider (CPU, CUDA, TensorRT EP)
    openvino_engine.py OpenVinoEngine: the bundle's ONNX compiled by OpenVINO for the CPU (f32 or bf16)
    openvino_open.py  opening a component on OpenVINO: the compiled-blob cache folder
    cpu_features.py   whether the CPU computes bf16 natively (AVX512_BF16, AMX): bf16 then races under auto
    cpu_choice.py     `auto` without a GPU: ORT vs OpenVINO f32 (vs bf16), one timed UNet call each, stored
    decision_cache.py measured-once records on disk, keyed (bundle, shape, threads, CPU, versions)
    probe_feeds.py    fixed seeded inputs for a component at a size (gate and measurement)
    trt_engine.py     TrtEngine / TrtSession: deserialized TensorRT plans, persistent buffers, CUDA graphs
    cuda_rt.py        the few CUDA runtime calls (cuda-bindings): streams, memory, copies, graphs
    graph_cache.py    shape-set keys and the bounded LRU of captured graphs
    backend_choice.py `--backend auto|trt|ort-cuda|ort-trt|ort-cpu` as a pure function of GpuFacts (GPU side)
    gpu_detect.py     what this machine offers (GPU, TensorRT, providers, engines; the GPU target)
    gpu_memory.py     peak VRAM for the benchmark
    gpu_engines.py    the pipeline's entry point: resolve the backend, open a bundle's engines

Reading order of the project: export (make a bundle) -> engines (build TensorRT plans) -> runtime (the
pipeline) -> backends (run a model). Imports go one way: runtime imports backends, backends import
engines (profiles, the plan store), engines import neither (tests/test_backends_layering.py checks it).
Importing this package imports no GPU library; those load inside the functions that need them.
"""
