//! The `butler` executable: parse the command line, run, and map failures to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match butler::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let json = cli.global.json;
    match butler::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = butler::exit_code(&err);
            if json {
                butler::report::print_json_line(
                    "error",
                    serde_json::json!({ "message": format!("{err:#}") }),
                );
            }
            eprintln!("butler: error: {err:#}");
            ExitCode::from(code)
        }
    }
}
