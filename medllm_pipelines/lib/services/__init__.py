"""Local services the embedded mode supervises (today: the OpenBao behind ``medllm services up``).

Process supervision is not security logic: the key service it starts is used
by :mod:`medllm_pipelines.lib.security`, but launching, health-waiting,
reusing and stopping a local server lives here.
"""
