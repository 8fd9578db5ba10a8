"""Fixtures and builders the tests share: servers, clients, images, models."""
