//! Integration tests: the real gateway on port 0, talking HTTP to the real Concourse simulator.
//! Every response body and header of the suite goes through `TestApp::send`, which fails the
//! test if it contains the simulator's URL, team, pipeline, user name or password.

mod helpers;

mod auth;
mod bad_input;
mod binary;
mod cli;
mod lifecycle;
mod listing;
mod openapi;
mod replicas;
mod resilience;
