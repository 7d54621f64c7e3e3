//! The `butler` executable: parse the command line, run, and map failures to exit codes.

use std::process::ExitCode;

use butler::ExitStatus;

fn main() -> ExitCode {
    let cli = match butler::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let status = if e.use_stderr() { ExitStatus::Usage } else { ExitStatus::Success };
            let _ = e.print();
            return ExitCode::from(status.code());
        }
    };
    let json = cli.global.json;
    let color = cli.global.color.stderr();
    match butler::run(cli) {
        Ok(status) => exit_code(status),
        Err(err) => {
            let code = butler::status_of(&err).code();
            if json {
                butler::report::print_json_line(
                    "error",
                    serde_json::json!({ "message": format!("{err:#}") }),
                );
            }
            // The same red, bold `error:` as clap's own messages, where colour is allowed.
            let label = if color { "\x1b[1;31merror:\x1b[0m" } else { "error:" };
            eprintln!("butler: {label} {err:#}");
            ExitCode::from(code)
        }
    }
}

/// Windows exit codes are 32-bit: `butler run` passes its child's on whole there (a tree stopped by
/// Ctrl-Break ends with 0xC000013A, which the 0..=255 of `ExitCode` would turn into success).
fn exit_code(status: ExitStatus) -> ExitCode {
    #[cfg(windows)]
    if let ExitStatus::Child(code) = status {
        // `exit` flushes stdout; nothing else is left to drop here.
        std::process::exit(code);
    }
    ExitCode::from(status.code())
}
