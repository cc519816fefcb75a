//! The `browserver` binary.

fn main() {
    eprintln!("browserver: the server is assembled in issue 6; see README.md");
    std::process::exit(2);
}
