"""Run store and background execution of training and evaluation runs."""
