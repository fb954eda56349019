//! One module per subcommand.
pub mod bench;
pub mod bench_kernels;
pub mod calibrate;
pub mod convert;
pub mod inspect;
pub mod keygen;
pub mod pull;
pub mod push;
pub mod quantize;
pub mod registry;
pub mod run;
pub mod sign;
pub mod verify;
pub mod verify_render;
