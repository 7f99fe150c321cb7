//! `kinesis consumers`: the enhanced fan-out consumers of a stream (what `consume
//! --fan-out` registers and keeps), listed or deregistered; JSON on standard output.

use aws_sdk_kinesis::Client;
use clap::{Args as ClapArgs, Subcommand};
use kinesis_errors::ServiceError;

use crate::Error;

/// Lists or deregisters the enhanced fan-out consumers of a stream.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `kinesis consumers` subcommand.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// The stream's consumers: `{"consumers": [{"name", "arn", "status", "created"}]}`.
    List {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
    },
    /// Deregisters one consumer (its subscriptions end; `consume --fan-out` registers it
    /// again at its next start).
    Deregister {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// The consumer's name (`consume --fan-out` names it after `--app`).
        #[arg(long)]
        name: String,
        /// Do it (without it, the deregistration is only described).
        #[arg(long)]
        yes: bool,
    },
}

/// The stream's ARN: consumer calls take only ARNs.
async fn stream_arn(client: &Client, stream: &str) -> Result<String, Error> {
    if stream.starts_with("arn:") {
        return Ok(stream.to_owned());
    }
    Ok(crate::streams::summary(client, stream)
        .await?
        .stream_arn()
        .to_owned())
}

async fn list(client: &Client, arn: &str) -> Result<serde_json::Value, Error> {
    let mut consumers = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => client.list_stream_consumers().next_token(token),
            None => client.list_stream_consumers().stream_arn(arn),
        };
        let page = request
            .send()
            .await
            .map_err(|e| ServiceError::from_sdk("ListStreamConsumers", e))?;
        for consumer in page.consumers() {
            consumers.push(serde_json::json!({
                "name": consumer.consumer_name(),
                "arn": consumer.consumer_arn(),
                "status": consumer.consumer_status().as_str(),
                "created": consumer.consumer_creation_timestamp().to_string(),
            }));
        }
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(serde_json::json!({ "stream": arn, "consumers": consumers }));
        }
    }
}

/// Runs `kinesis consumers`; prints its JSON.
pub async fn run(args: Args) -> Result<(), Error> {
    let config = crate::aws_config().await?;
    let client = Client::new(&config);
    let out = match args.command {
        Command::List { stream } => list(&client, &stream_arn(&client, &stream).await?).await?,
        Command::Deregister { stream, name, yes } => {
            let arn = stream_arn(&client, &stream).await?;
            if yes {
                client
                    .deregister_stream_consumer()
                    .stream_arn(&arn)
                    .consumer_name(&name)
                    .send()
                    .await
                    .map_err(|e| ServiceError::from_sdk("DeregisterStreamConsumer", e))?;
            } else {
                eprintln!("would deregister consumer {name} of {arn}: add --yes to deregister");
            }
            serde_json::json!({ "stream": arn, "consumer": name, "deregistered": yes })
        }
    };
    println!("{out}");
    Ok(())
}
