//! Writes the man pages and shell completions that the packages ship, generated from the
//! clap definitions the binaries parse (`netkey::cli`), so they cannot drift apart.
//!
//! `packaging/build.sh` runs it as `cargo run --release --example gen_assets -- OUTDIR`:
//!
//! ```text
//! OUTDIR/man/netkeyd.8                 OUTDIR/man/netkeyctl.1
//! OUTDIR/completions/bash/netkeyd      OUTDIR/completions/bash/netkeyctl
//! OUTDIR/completions/zsh/_netkeyd      OUTDIR/completions/zsh/_netkeyctl
//! OUTDIR/completions/fish/netkeyd.fish OUTDIR/completions/fish/netkeyctl.fish
//! ```
//!
//! The file names are the ones each shell looks up by command name. `netkeyctl.1` is one
//! page with every subcommand in a COMMANDS section (clap_mangen's own subcommand list
//! points at `netkeyctl-SUB(1)` pages that are not shipped). `netkey-vendor` is the
//! vendor's tool and is not packaged, so it gets neither.

use clap::{Arg, ArgAction, Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use netkey::cli::{netkeyctl, netkeyd};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen_assets OUTDIR");
        return ExitCode::FAILURE;
    };
    match generate(Path::new(&out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_assets: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> Result<(), String> {
    let man_dir = out.join("man");
    create_dir(&man_dir)?;
    write(&man_dir.join("netkeyd.8"), &netkeyd_page()?)?;
    write(&man_dir.join("netkeyctl.1"), &netkeyctl_page()?)?;
    for (shell, dir, file_name) in [
        (Shell::Bash, "bash", "{}"),
        (Shell::Zsh, "zsh", "_{}"),
        (Shell::Fish, "fish", "{}.fish"),
    ] {
        let dir = out.join("completions").join(dir);
        create_dir(&dir)?;
        for mut cmd in [netkeyd::Args::command(), netkeyctl::Cli::command()] {
            let name = cmd.get_name().to_string();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut script);
            write(&dir.join(file_name.replace("{}", &name)), &script)?;
        }
    }
    Ok(())
}

/// `netkeyd(8)`: clap_mangen's page plus FILES, SIGNALS and SEE ALSO.
fn netkeyd_page() -> Result<Vec<u8>, String> {
    let man = Man::new(netkeyd::Args::command())
        .section("8")
        .manual("netkey");
    let mut page = Vec::new();
    man.render(&mut page).map_err(|e| e.to_string())?;
    page.extend_from_slice(
        concat!(
            ".SH FILES\n",
            ".TP\n/etc/netkey/netkeyd.toml\n",
            "Settings, read with \\fB\\-\\-config\\fR; every setting is also a flag, and flags win.\n",
            ".TP\n/var/lib/netkey\n",
            "The state directory: database, audit log, daemon identity.\n",
            ".TP\n/run/netkey/admin.sock\n",
            "The admin socket that \\fBnetkeyctl\\fR(1) talks to (mode 0660, group netkey).\n",
            ".SH SIGNALS\n",
            "SIGTERM and SIGINT stop the daemon cleanly: everything it acknowledged is on disk.\n",
            ".SH SEE ALSO\n",
            "\\fBnetkeyctl\\fR(1), \\fBsystemd.service\\fR(5); the unit is \\fBnetkeyd.service\\fR.\n",
        )
        .as_bytes(),
    );
    Ok(page)
}

/// `netkeyctl(1)`: title, synopsis, description and global options from clap_mangen, then
/// every subcommand, nested ones included, with its usage and arguments.
fn netkeyctl_page() -> Result<Vec<u8>, String> {
    let mut cmd = netkeyctl::Cli::command();
    cmd.build();
    let man = Man::new(cmd.clone()).section("1").manual("netkey");
    let mut page = Vec::new();
    let io = |e: std::io::Error| e.to_string();
    man.render_title(&mut page).map_err(io)?;
    man.render_name_section(&mut page).map_err(io)?;
    man.render_synopsis_section(&mut page).map_err(io)?;
    man.render_description_section(&mut page).map_err(io)?;
    man.render_options_section(&mut page).map_err(io)?;
    page.extend_from_slice(b".SH COMMANDS\n");
    let mut text = String::new();
    commands(&mut text, &cmd);
    page.extend_from_slice(text.as_bytes());
    page.extend_from_slice(
        concat!(
            ".SH EXIT STATUS\n",
            "0 on success; otherwise non\\-zero, with a one\\-line reason on standard error.\n",
            ".SH FILES\n",
            ".TP\n/run/netkey/admin.sock\n",
            "The daemon's admin socket (\\fB\\-\\-socket\\fR). Root and members of the ",
            "netkey group may use it.\n",
            ".SH SEE ALSO\n",
            "\\fBnetkeyd\\fR(8)\n",
        )
        .as_bytes(),
    );
    man.render_version_section(&mut page).map_err(io)?;
    Ok(page)
}

/// One `.SS` per subcommand, depth first, in definition order.
fn commands(out: &mut String, cmd: &Command) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let usage = sub.clone().render_usage().to_string();
        let usage = usage.trim().trim_start_matches("Usage:").trim();
        out.push_str(&format!(
            ".SS \"{}\"\n",
            escape(usage).replace('"', "\\(dq")
        ));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            out.push_str(&text_lines(&about.to_string()));
        }
        for arg in sub.get_arguments().filter(|a| shown(a)) {
            out.push_str(".TP\n");
            out.push_str(&format!("{}\n", arg_label(arg)));
            let mut help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && arg.get_action().takes_values() {
                if !help.is_empty() {
                    help.push(' ');
                }
                help.push_str(&format!("[default: {}]", defaults.join(", ")));
            }
            if !help.is_empty() {
                out.push_str(&text_lines(&help));
            }
        }
        commands(out, sub);
    }
}

/// Arguments worth listing under a subcommand: not hidden, not `--help`/`--version`, not
/// the global options (the OPTIONS section lists them), and not positional arguments
/// without help, which the usage line already names.
fn shown(arg: &Arg) -> bool {
    !arg.is_hide_set()
        && !arg.is_global_set()
        && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
        && (!arg.is_positional() || arg.get_help().is_some() || arg.get_long_help().is_some())
}

/// `\fB--name\fR \fINAME\fR` for an option, `\fINAME\fR` for a positional argument.
fn arg_label(arg: &Arg) -> String {
    let values: Vec<String> = match arg.get_value_names() {
        Some(names) => names.iter().map(|n| n.to_string()).collect(),
        None => vec![arg.get_id().as_str().to_uppercase()],
    };
    let repeat = matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let values = values
        .iter()
        .map(|v| format!("\\fI{}\\fR", escape(v)))
        .collect::<Vec<_>>()
        .join(" ");
    let dots = if repeat { "..." } else { "" };
    match (arg.get_long(), arg.get_action().takes_values()) {
        (Some(long), true) => format!("\\fB\\-\\-{}\\fR {values}{dots}", escape(long)),
        (Some(long), false) => format!("\\fB\\-\\-{}\\fR", escape(long)),
        (None, _) => format!("{values}{dots}"),
    }
}

/// Plain text as roff lines: escaped, and never starting with a control character.
fn text_lines(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = escape(line.trim_end());
        if line.is_empty() {
            out.push_str(".sp\n");
            continue;
        }
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

fn create_dir(dir: &PathBuf) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut file =
        fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
