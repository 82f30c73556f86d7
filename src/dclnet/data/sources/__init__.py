"""Readers that turn raw data-set layouts into :class:`~dclnet.data.records.Record` lists."""
