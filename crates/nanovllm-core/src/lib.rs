//! # nanovllm-core
//!
//! The engine. Owns [`EngineConfig`], the user-facing `LLM` (batch
//! `generate`) and `LLMEngine` (step API: add_request / step / abort), the
//! model runner (batch preparation on the device, KV-cache sizing, CUDA
//! graphs, tensor-parallel workers), the sampler and the tokenizer.
//!
//! It wires the scheduler (plain data) to a model (tensors): the scheduler
//! never sees a tensor and the model never sees a scheduling decision.
