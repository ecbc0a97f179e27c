"""Task modules grouped by concern: examples, heartbeat, maintenance."""
