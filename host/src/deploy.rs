//! The blue/green state machine: one deploy, rollback, plan and status.
