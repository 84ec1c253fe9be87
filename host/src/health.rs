//! HTTP health probes of a colour through reqwest, judged by the health-policy plugin.
