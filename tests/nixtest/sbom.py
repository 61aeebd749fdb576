"""The field's own validators, for the SBOM tests: cyclonedx-python-lib's JSON schema
validator (strict) and spdx-tools' parser and validator.  Each returns the list of
complaints, empty for a valid document.  ``assert_image_sbom`` judges the image's SBOM as
the Packer templates download it."""
import json
import os


def cyclonedx_errors(text, version):
    """Complaints of the CycloneDX ``version`` ('1.5' or '1.6') schema about ``text``."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    schema = {'1.5': SchemaVersion.V1_5, '1.6': SchemaVersion.V1_6}[version]
    if isinstance(text, bytes):
        text = text.decode('utf-8')
    found = JsonStrictValidator(schema).validate_str(text, all_errors=True)
    return [str(error) for error in found] if found else []


def spdx_errors(path):
    """Complaints of spdx-tools about the SPDX 2.3 JSON file at ``path``."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    return [message.validation_message
            for message in validate_full_spdx_document(parse_file(str(path)), 'SPDX-2.3')]


def assert_image_sbom(directory, closure, timestamp):
    """The image's SBOM as a Packer template downloads it (``directory``/image.cdx.json and
    image.spdx.json): both valid, written at the pinned ``timestamp``, naming ``closure``'s
    top path (a PgClosure) and a component for every path of its closure."""
    with open(os.path.join(str(directory), 'image.cdx.json')) as f:
        text = f.read()
    assert cyclonedx_errors(text, '1.6') == []
    assert spdx_errors(os.path.join(str(directory), 'image.spdx.json')) == []
    document = json.loads(text)
    assert document['metadata']['timestamp'] == timestamp, document['metadata']
    assert {'name': 'nixcache:top_path', 'value': closure.top} in document['metadata']['properties']
    assert set(closure.paths) <= set(component['bom-ref'] for component in document['components'])
