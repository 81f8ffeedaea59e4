//! The `trusted-pool` command: see `trusted-pool --help`.

fn main() {
    std::process::exit(trusted_pool::cli::run(
        std::env::args_os().skip(1).collect(),
    ));
}
