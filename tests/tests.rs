//! End-to-end tests, linked into one binary (linking is real time on 2 cores). They
//! drive a real Docker engine, real nginx and real wasmtime; helpers live in `support`.

mod support;

mod ci_examples;
mod command_lines;
mod crash;
mod deploy;
mod docker;
mod faults;
mod gate;
mod health;
mod history;
mod hostile;
mod plugin_kit;
mod plugins;
mod proxy;
mod serve;
mod shape;
mod tls;
mod zero_downtime;
