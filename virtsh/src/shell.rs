//! The interactive shell, as virsh's: without a command virtsh reads command lines from
//! stdin, with a greeting and a `virtsh # ` prompt when stdin is a terminal, until
//! `quit`, `exit` or the end of input. Lines are split as a shell would (quotes,
//! backslashes, `;` between commands, `#` comments).

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use clap::Parser as _;

use crate::cli::Cli;
use crate::{broken_pipe, report, run_line, Flow, Session};

pub async fn run(s: &mut Session) -> i32 {
    let tty = std::io::stdin().is_terminal();
    if tty {
        let _ = writeln!(
            std::io::stdout(),
            "Welcome to virtsh, the virtualization interactive terminal.\n\n\
             Type:  'help' for help with commands\n       'quit' to quit\n"
        );
    }
    loop {
        if tty {
            let mut o = std::io::stdout();
            if write!(o, "virtsh # ").and_then(|_| o.flush()).is_err() {
                return 0;
            }
        }
        let Some(line) = read_line() else {
            if tty {
                let _ = writeln!(std::io::stdout());
            }
            return 0;
        };
        let commands = match split(&line) {
            Ok(c) => c,
            Err(e) => {
                report(&anyhow::anyhow!(e));
                continue;
            }
        };
        for words in commands {
            let argv = std::iter::once("virtsh".to_string()).chain(words);
            let cli = match Cli::try_parse_from(argv) {
                Ok(c) => c,
                Err(e) => {
                    // Help text, or a usage error, for this line only.
                    let _ = e.print();
                    continue;
                }
            };
            match run_line(s, cli).await {
                Ok(Flow::Quit) => return 0,
                Ok(Flow::Continue) => {}
                Err(e) if broken_pipe(&e) => return 0,
                Err(e) => report(&e),
            }
        }
    }
}

/// One line of stdin; None at its end or when it cannot be read (a vanished terminal).
/// Bytes that are not UTF-8 are replaced, not taken for the end of input.
fn read_line() -> Option<String> {
    let mut line = Vec::new();
    match std::io::stdin().lock().read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(String::from_utf8_lossy(&line).into_owned()),
    }
}

/// Splits a line into commands (at unquoted `;`) and words.
pub fn split(line: &str) -> Result<Vec<Vec<String>>, String> {
    let mut cmds = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => w.push(c),
                            None => return Err("unterminated quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("dangling \\".into()),
            },
            '#' if word.is_none() => break,
            ';' => {
                words.extend(word.take());
                if !words.is_empty() {
                    cmds.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word.take());
    if !words.is_empty() {
        cmds.push(words);
    }
    Ok(cmds)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split("list --all; dominfo 'a b' # c").unwrap(),
            vec![vec!["list", "--all"], vec!["dominfo", "a b"]]
        );
        assert_eq!(
            split(r#"x "a\"b" c\ d ''"#).unwrap(),
            vec![vec!["x", "a\"b", "c d", ""]]
        );
        assert!(split("'open").is_err());
        assert!(split("x\\").is_err());
        assert!(split("  # only a comment").unwrap().is_empty());
    }
}
