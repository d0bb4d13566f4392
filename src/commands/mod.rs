//! One module per subcommand: each turns its clap arguments into a library call and prints the
//! result.

pub mod bench;
pub mod compare;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod inspect;
pub mod profiles;
pub mod quantize;
pub mod recommend;
pub mod test_model;
