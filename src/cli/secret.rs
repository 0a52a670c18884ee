//! `warden secret put|ls|rm`: a namespace's secrets, referred to from specs as
//! `env = { VAR = { secret = "name" } }`. A value is read from stdin, never argv (argv is in
//! every process listing), and no command ever prints one.

use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use warden_core::time::format_rfc3339_ms;
use warden_runtime::view::SecretView;

use super::common::{encode, format_table, show, Client, Output};

#[derive(Subcommand)]
pub(super) enum SecretCommand {
    /// Put a secret's next version, its value read from stdin (one trailing newline dropped,
    /// so `echo value | warden secret put NAME` stores `value`). Cells pick it up at their next start.
    Put {
        name: String,
        #[arg(long, default_value = "default", value_name = "NS")]
        namespace: String,
    },
    /// List secrets: names, versions, when and by whom (never values).
    Ls {
        /// Only this namespace (default: every namespace you hold).
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// Remove a secret: cells that refer to it fail their next start.
    Rm {
        name: String,
        #[arg(long, default_value = "default", value_name = "NS")]
        namespace: String,
    },
}

pub(super) fn run_secret(client: &Client, command: SecretCommand, output: Output) -> Result<()> {
    match command {
        SecretCommand::Put { name, namespace } => {
            let mut value = Vec::new();
            std::io::stdin().lock().read_to_end(&mut value).context("reading the secret's value from stdin")?;
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            if value.is_empty() {
                bail!("the value is read from stdin, which was empty: `warden secret put {name} < FILE`");
            }
            let path = format!("/v1/secrets/{}/{}", encode(&namespace), encode(&name));
            let secret: SecretView = client.json("PUT", &path, Some(&value))?;
            show(output, &secret, |s| eprintln!("put {} in namespace {}: version {}", s.name, s.namespace, s.version))
        }
        SecretCommand::Ls { namespace } => {
            let path = match &namespace {
                Some(namespace) => format!("/v1/secrets?namespace={}", encode(namespace)),
                None => "/v1/secrets".to_string(),
            };
            let secrets: Vec<SecretView> = client.json("GET", &path, None)?;
            show(output, &secrets, |secrets| {
                let mut rows = vec![["NAMESPACE", "NAME", "VERSION", "PUT", "BY"].map(String::from).to_vec()];
                for s in secrets {
                    rows.push(vec![
                        s.namespace.clone(),
                        s.name.clone(),
                        s.version.to_string(),
                        format_rfc3339_ms(s.put_at_ms),
                        s.put_by.clone(),
                    ]);
                }
                print!("{}", format_table(&rows));
            })
        }
        SecretCommand::Rm { name, namespace } => {
            client.call("DELETE", &format!("/v1/secrets/{}/{}", encode(&namespace), encode(&name)), None)?;
            eprintln!("removed {name} from namespace {namespace}: cells that refer to it fail their next start");
            Ok(())
        }
    }
}
