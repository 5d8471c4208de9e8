//! Test support: real clusters, an in-process capture, a pgoutput encoder.
#![allow(dead_code)]

pub mod cluster;
pub mod encoder;
pub mod proxy;
pub mod running;
pub mod tap;
pub mod twins;
pub mod wait;

/// Runs an async scenario against the default server build and a 16+ build.
#[macro_export]
macro_rules! on_every_server {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn default_server() {
                super::$scenario(&$crate::support::cluster::default_bin()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn server_16_plus() {
                super::$scenario(&$crate::support::cluster::next_bin()).await
            }
        }
    };
}

/// An error and its causes as teal prints them.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    teal::error::Report(e).to_string()
}
