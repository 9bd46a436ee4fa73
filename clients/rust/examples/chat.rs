//! A terminal chat: `cargo run -p edgechat-client --example chat -- http://127.0.0.1:8787 lobby ada`.
//!
//! Lines typed on stdin are sent (each printed with its id once the server stored it);
//! messages, joins and connection changes are printed as they come. `/older` pages back
//! through the history, `/who` asks who is here, an empty line or end of input leaves.
//! `EDGECHAT_TOKEN=<jwt>` joins with a signed token (the server then decides the name).

use edgechat_client::{connect, ConnectOptions, Event};
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8787".into());
    let room_name = args.next().unwrap_or_else(|| "lobby".into());
    let name = args.next().unwrap_or_else(|| "rustacean".into());

    // A signed token for a server with `--auth-mode`, from the environment (not the command
    // line, where `ps` would show it).
    let options = ConnectOptions {
        token: std::env::var("EDGECHAT_TOKEN")
            .ok()
            .filter(|token| !token.is_empty()),
        ..ConnectOptions::new(url, room_name, name)
    };
    let (room, mut events) = connect(options)?;
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Message(m) => println!("#{} {}: {}", m.id.unwrap_or(0), m.name, m.message),
                Event::Join { name } => println!("* {name} joined"),
                Event::Quit { name } => println!("* {name} left"),
                Event::Gap { since } => {
                    println!("! messages after #{since} could not be recovered")
                }
                Event::State { state, .. } => println!("~ {state:?}"),
                Event::Error { message, fatal } => println!("! {message} (fatal: {fatal})"),
                _ => {}
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.as_str() {
            "" => break,
            "/who" => println!("here: {:?}", room.presence().await?),
            "/older" => {
                let page = room.load_older(20).await?;
                for m in &page.messages {
                    println!("(older) #{} {}: {}", m.id.unwrap_or(0), m.name, m.message);
                }
                if !page.has_more {
                    println!("(that is the oldest message the server keeps)");
                }
            }
            text => {
                let room = room.clone();
                let text = text.to_owned();
                // Sends are queued in order; each resolves once durable (or refused).
                tokio::spawn(async move {
                    match room.send(text).await {
                        Ok(id) => println!("(stored as #{id})"),
                        Err(error) => println!("! not sent: {error}"),
                    }
                });
            }
        }
    }
    room.close().await;
    Ok(())
}
