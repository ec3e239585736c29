"""Label stage: labelled sets built from de-identified, consented data only."""


from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.common import counts_by, frame_metadata, versions_metadata, warehouse_location
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.label.conditions import label_from_conditions
from medllm_pipelines.resources.warehouse import WarehouseResource

SPEC_ID = "t2d_risk"


@asset(
    key=keys.DIABETES_LABELS,
    deps=[keys.DEID_PATIENTS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
)
def diabetes_labels(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Type 2 diabetes labels (ICD-10 E11 from any institution) for persons with a granted research consent."""
    wh = warehouse.get()
    spec = load_spec(SPEC_ID)
    labelled = label_from_conditions(
        wh.read_table(*warehouse_location(keys.DEID_PATIENTS)),
        wh.read_table(*warehouse_location(keys.DEID_CONDITIONS)),
        wh.read_table(*warehouse_location(keys.CONSENT_REGISTRY)),
        spec.target_icd10_category,
    )
    frame = labelled.frame
    excluded = sum(labelled.excluded_by_consent.values())
    wh.write_table(*warehouse_location(keys.DIABETES_LABELS), frame)
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "records_in": labelled.persons_in,
            "records_out": len(frame),
            "removed[no_granted_consent]": excluded,
            "reconciled": labelled.persons_in == len(frame) + excluded,
            "excluded_by_consent_status": MetadataValue.json(labelled.excluded_by_consent),
            "rows_by_label": counts_by(frame, "label"),
            "label_source": f"ICD-10 {spec.target_icd10_category} (weak label from coded diagnoses)",
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


ASSETS = [diabetes_labels]
