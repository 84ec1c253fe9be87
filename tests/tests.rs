//! End-to-end tests, linked into one binary (linking is real time on 2 cores). They
//! drive a real Docker engine, real nginx and real wasmtime; helpers live in `support`.

mod support;

mod app_secrets;
mod canary;
mod ci_examples;
mod command_lines;
mod crash;
mod dashboard;
mod deploy;
mod docker;
mod faults;
mod front_door;
mod fronts;
mod gate;
mod health;
mod history;
mod history_html;
mod hooks;
mod hostile;
mod image;
mod init;
mod metrics;
mod notify;
mod plugin_kit;
mod plugins;
mod proxy;
mod remote;
mod serve;
mod shape;
mod swarm;
mod tls;
mod zero_downtime;
