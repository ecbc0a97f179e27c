"""Helpers the tests share: make targets and sandbox state, deploy runs, the loopback broker test fleet."""
