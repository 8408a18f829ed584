"""Dialplans."""
