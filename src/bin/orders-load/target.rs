//! The server under load: N separate HTTP/2 connections and the metadata
//! every call carries, built once.
//!
//! The generated client is used directly rather than `orders::sdk::Client`:
//! the SDK formats the `authorization` header and may retry on every call,
//! and a load generator must neither spend CPU per call on what can be built
//! once nor hide errors behind retries.

use crate::raw::RawClient;
use anyhow::Context;
use orders::pb::order_service_client::OrderServiceClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub type Client = OrderServiceClient<Channel>;

/// What a worker calls through.
pub struct Conn {
    pub typed: Client,
    pub raw: RawClient,
}

/// How to reach the server.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// `https://host:port` (TLS) or `http://host:port` (plaintext).
    #[arg(
        long,
        env = "ORDERS_ENDPOINT",
        default_value = "https://localhost:50051"
    )]
    pub endpoint: String,
    /// PEM CA certificate that signed the server's certificate.
    #[arg(long, env = "ORDERS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Name to check the server certificate against (default: the endpoint's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// Bearer token sent with every call.
    #[arg(
        long,
        env = "ORDERS_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token (read once).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Deadline of each unary call (sent as `grpc-timeout`).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
}

pub struct Target {
    channels: Vec<Channel>,
    auth: Option<MetadataValue<Ascii>>,
    timeout: Duration,
}

impl Target {
    /// Opens `connections` connections now, so a wrong address, CA or
    /// certificate fails before any load is sent.
    pub async fn connect(args: &ConnectArgs, connections: usize) -> anyhow::Result<Self> {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --token-file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let auth = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .context("the token has characters not allowed in metadata")
            })
            .transpose()?;
        let mut endpoint = Endpoint::from_shared(args.endpoint.clone())
            .with_context(|| format!("invalid --endpoint {:?}", args.endpoint))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if args.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(path) = &args.ca_cert {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(domain) = &args.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
        } else if !args.endpoint.starts_with("http://") {
            anyhow::bail!(
                "--endpoint {:?}: expected https://host:port or http://host:port",
                args.endpoint
            );
        }
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            // Each `connect` is its own HTTP/2 connection.
            channels.push(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {}", args.endpoint))?,
            );
        }
        Ok(Self {
            channels,
            auth,
            timeout: args.timeout,
        })
    }

    pub fn connections(&self) -> usize {
        self.channels.len()
    }

    /// A client on connection `i` (round-robin over the connections).
    pub fn client(&self, i: usize) -> Client {
        OrderServiceClient::new(self.channels[i % self.channels.len()].clone())
    }

    /// Both clients on connection `i`: the generated one and the lean one.
    pub fn conn(&self, i: usize) -> Conn {
        Conn {
            typed: self.client(i),
            raw: RawClient::new(self.channels[i % self.channels.len()].clone()),
        }
    }

    /// A unary request: the token and the deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.stream_request(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A streaming request: the token, no deadline (a watch lasts the run).
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }
}
