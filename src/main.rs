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
        Ok(status) => ExitCode::from(status.code()),
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
