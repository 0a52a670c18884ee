//! `warden keys add|ls|revoke` (admins): API keys with a role and namespaces, managed at runtime
//! through the API and journaled; no file to edit, no restart.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use warden_core::time::format_rfc3339_ms;
use warden_runtime::auth::Identity;
use warden_runtime::view::{KeyAddRequest, KeyView};

use super::common::{encode, format_table, show, Client, Output};

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Add a key: an admin (everything), an operator (runs, stops, checkpoints, logs, jobs and
    /// rollouts in its namespaces) or a viewer (lists, status and events in its namespaces).
    Add(AddArgs),
    /// List the keys: the data dir's `authorized_keys` (admins) and the journaled ones.
    Ls,
    /// Revoke a key: its next request is refused.
    Revoke { name: String },
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("key").required(true))]
pub(super) struct AddArgs {
    /// The key's name, unique among keys.
    name: String,
    /// admin, operator or viewer.
    #[arg(long)]
    role: String,
    /// A namespace the key holds its role in (repeat for more; default `default`). Not for admins.
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// The public key of an identity its holder made (`ed25519:<64 hex digits>`).
    #[arg(long, value_name = "ed25519:HEX", group = "key")]
    public_key: Option<String>,
    /// Make a new identity and write it (secret included) to this file, mode 0600, for its holder
    /// to use with `--credential FILE`; refused if the file exists.
    #[arg(long, value_name = "FILE", group = "key")]
    out: Option<PathBuf>,
}

pub(super) fn run_keys(client: &Client, command: KeysCommand, output: Output) -> Result<()> {
    match command {
        KeysCommand::Add(args) => add(client, args, output),
        KeysCommand::Ls => {
            let keys: Vec<KeyView> = client.json("GET", "/v1/keys", None)?;
            show(output, &keys, |keys| {
                let mut rows = vec![["NAME", "ROLE", "NAMESPACES", "SOURCE", "ADDED", "PUBLIC KEY"].map(String::from).to_vec()];
                for key in keys {
                    rows.push(vec![
                        key.name.clone(),
                        key.role.clone(),
                        if key.role == "admin" { "*".into() } else { key.namespaces.join(",") },
                        key.source.clone(),
                        key.added_at_ms.map_or("-".into(), format_rfc3339_ms),
                        key.public_key.clone(),
                    ]);
                }
                print!("{}", format_table(&rows));
            })
        }
        KeysCommand::Revoke { name } => {
            client.call("POST", &format!("/v1/keys/{}/revoke", encode(&name)), None)?;
            eprintln!("revoked {name}: its next request is refused");
            Ok(())
        }
    }
}

fn add(client: &Client, args: AddArgs, output: Output) -> Result<()> {
    let (public_key, written) = match (&args.public_key, &args.out) {
        (Some(public_key), None) => (public_key.clone(), None),
        (None, Some(out)) => {
            if out.exists() {
                bail!("{} exists already; choose another --out (a credential is never overwritten)", out.display());
            }
            let identity = Identity::generate(&args.name);
            identity.save_in_place(out).with_context(|| format!("cannot write the new identity to {}", out.display()))?;
            (identity.principal(), Some(out.clone()))
        }
        _ => unreachable!("clap requires exactly one of --public-key and --out"),
    };
    let request = KeyAddRequest { name: args.name, role: args.role, namespaces: args.namespaces, public_key };
    let answer: Result<KeyView> = client.json("POST", "/v1/keys", Some(&serde_json::to_vec(&request)?));
    let key = match answer {
        Ok(key) => key,
        Err(e) => {
            // The server refused it: the identity written for it would sign nothing.
            if let Some(out) = &written {
                let _ = std::fs::remove_file(out);
            }
            return Err(e);
        }
    };
    show(output, &key, |key| {
        let namespaces = if key.role == "admin" { "every namespace".to_string() } else { key.namespaces.join(", ") };
        eprintln!("added {} ({}; {namespaces}): {}", key.name, key.role, key.public_key);
        if let Some(out) = &written {
            eprintln!("its credential is {} (mode 0600): hand it over, and use it with --credential", out.display());
        }
    })
}
