//! A TCP proxy a test can take down, to make a store (or any server) on
//! the shared machine refuse connections for a while without touching the
//! server itself: the other tests keep using it.
//!
//! While down, the proxy's port refuses new connections (its listener is
//! closed) and every connection through it is cut, as when the server's
//! host goes away; brought up again, it listens on the same port.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy from a local port to `upstream`.
pub struct TcpProxy {
    /// `127.0.0.1:<port>`: point clients here instead of at the upstream.
    pub listen: SocketAddr,
    upstream: SocketAddr,
    /// `true` while up; connections watch it and close when it turns false.
    up: Arc<watch::Sender<bool>>,
    accept: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let accept = Some(tokio::spawn(accept_loop(listener, upstream, up.clone())));
        Ok(Self {
            listen,
            upstream,
            up,
            accept,
        })
    }

    /// Refuses new connections and cuts the open ones.
    pub fn take_down(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.up.send_replace(false);
    }

    /// Listens again on the same port.
    pub async fn bring_up(&mut self) -> Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        self.up.send_replace(true);
        let listener = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("listening on {} again", self.listen))?;
        self.accept = Some(tokio::spawn(accept_loop(
            listener,
            self.upstream,
            self.up.clone(),
        )));
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.take_down();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, up: Arc<watch::Sender<bool>>) {
    while let Ok((client, _)) = listener.accept().await {
        let mut down = up.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = down.wait_for(|up| !*up) => {}
            }
        });
    }
}
