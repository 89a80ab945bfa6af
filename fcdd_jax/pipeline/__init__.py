"""The run pipeline: config checks, the run builder (model, optimiser, state, mesh), the pure train/eval steps
and the one loop, evaluate-and-write (train); many runs as one program (multirun); refinement rounds
(refine_run, refine); console/TensorBoard/history logging (train_log)."""
