//! The TCP side of the fleet: one listener task per upstream on one tokio thread,
//! a task per connection, a task per delayed answer.

use super::shared::Shared;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(super) async fn serve_tcp(
    i: usize,
    listener: tokio::net::TcpListener,
    sh: Arc<Shared>,
    seed: u64,
) {
    let mut conn_no = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        conn_no += 1;
        let sh = sh.clone();
        let seed = seed.wrapping_add(conn_no << 20);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (mut rd, mut wr) = stream.into_split();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
            let writer = tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if wr.write_all(&msg).await.is_err() {
                        break;
                    }
                }
            });
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut name = String::new();
            let idle = Duration::from_secs(30);
            loop {
                let mut len = [0u8; 2];
                match tokio::time::timeout(idle, rd.read_exact(&mut len)).await {
                    Ok(Ok(_)) => {}
                    _ => break,
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                if rd.read_exact(&mut msg).await.is_err() {
                    break;
                }
                let Some((answer, delay, idx, outcome)) =
                    sh.handle(i, true, &msg, &mut rng, &mut name)
                else {
                    continue;
                };
                let tx = tx.clone();
                let sh = sh.clone();
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut framed = Vec::with_capacity(answer.len() + 2);
                    framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
                    framed.extend_from_slice(&answer);
                    let _ = tx.send(framed).await;
                    sh.done(idx, outcome);
                });
            }
            drop(tx);
            let _ = writer.await;
        });
    }
}
