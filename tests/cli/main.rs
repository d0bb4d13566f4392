//! End-to-end tests of the `qtier` binary on real files: the test model (all-MiniLM-L6-v2,
//! fetched into the cache by `qtier test-model`) and small checkpoints the tests write themselves.

mod common;

mod aws_checksums;
mod bad_input;
mod bench;
mod device;
mod k8s;
mod llama;
mod models;
mod publish;
mod quantize;
mod recommend;
mod run;
mod s3_server;
mod serve;
