"""Audio core: G.711, G.722, streaming resampling, framing and levels.

Imported as ``bridge.codecs`` (``bridge/codecs`` links to this folder): a top-level
package called ``codecs`` would be shadowed by the standard library's ``codecs``, which
Python imports at start-up. Inside the package, imports are relative for the same reason.

Modules: ``g711`` (PCMU/PCMA), ``g722`` (G.722 wideband, through PyAV),
``resample`` (``StreamResampler`` and its modes, ``ResampleBatch``),
``fir`` (the low-latency FIR engine those use by default),
``framing`` (``PlayoutBuffer``), ``level`` (dBFS, silence, tones).
"""
