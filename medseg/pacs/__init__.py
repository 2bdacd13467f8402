"""medseg as a DICOM citizen: PACS sources and destinations, and the listening node.

- :mod:`medseg.pacs.address`: ``AET@HOST:PORT`` and DICOMweb URLs;
- :mod:`medseg.pacs.dimse`: C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE (pynetdicom);
- :mod:`medseg.pacs.dicomweb`: QIDO-RS, WADO-RS, STOW-RS (dicomweb-client);
- :mod:`medseg.pacs.outbox`: results to send, each sent once, failed sends retried and reported;
- :mod:`medseg.pacs.node`: ``medseg listen``, a storage SCP that segments each series it receives.

Everything here needs the ``pacs`` extra: ``pip install 'medseg[pacs]'``.
"""
