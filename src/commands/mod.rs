//! One module per subcommand: each turns its clap arguments into a library call and prints the
//! result.

pub mod bench;
pub mod bench_server;
pub mod compare;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod k8s;
pub mod profiles;
pub mod publish;
pub mod quantize;
pub mod recommend;
pub mod run;
pub mod serve;
pub mod synth;
pub mod test_model;
