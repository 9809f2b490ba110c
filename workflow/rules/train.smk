rule train_dm:
    output:
        manifest=LAYOUT.manifest("dm"),
    log:
        LAYOUT.log("train_dm", "dm"),
    benchmark:
        LAYOUT.benchmark("train_dm", "dm")
    conda:
        "../../envs/torch.yaml"
    threads: 2
    # train.gpus processes (a resource, not a param: how many is no rerun trigger), each with a GPU
    resources:
        processes=training_processes("dm"),
        gpu=GPUS * training_processes("dm"),
    params:
        cfg=stage_json("train_dm"),
        out_dir=trail_folder,
    shell:
        "lcsc_train {resources.processes} train-dm --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model=dm"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


# Consistency models: cd distils the diffusion trail (its manifest is an input, so train_dm runs
# first), ct trains from data.
rule train_cm:
    input:
        teacher=teacher_input,
    output:
        manifest=LAYOUT.manifest("cm_{mode}"),
    log:
        LAYOUT.log("train_cm", "{mode}"),
    benchmark:
        LAYOUT.benchmark("train_cm", "{mode}")
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        processes=train_cm_processes,
        gpu=train_cm_gpus,
    params:
        cfg=train_cm_json,
        out_dir=trail_folder,
        teacher=teacher_args,
    shell:
        "lcsc_train {resources.processes} train-cm --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model=cm_{wildcards.mode:q}"
        " --mode {wildcards.mode:q} {params.teacher:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


# The training-cost experiment: a manifest over the first part of a trail (cost.fraction).
rule truncate_trail:
    input:
        manifest=LAYOUT.manifest("{base}"),
    output:
        manifest=LAYOUT.manifest(f"{{base}}{TRUNCATED}{{percent}}"),
    log:
        LAYOUT.log("truncate_trail", f"{{base}}{TRUNCATED}{{percent}}"),
    localrule: True
    conda:
        "../../envs/torch.yaml"
    params:
        cfg=stage_json("truncate_trail"),
        model=truncated_model,
    shell:
        "lcsc truncate-trail --config-json {params.cfg:q} --model {params.model:q}"
        " --manifest {input.manifest:q} --out {output.manifest:q} > {log:q} 2>&1"


# A trail from another trainer (trail.source diffusers or state_dict): a manifest over its files,
# which stay where they are; the training rules above do not run.
if imported(config):

    rule import_trail:
        output:
            manifest=LAYOUT.manifest(IMPORTED),
        log:
            LAYOUT.log("import_trail", IMPORTED),
        benchmark:
            LAYOUT.benchmark("import_trail", IMPORTED)
        conda:
            "../../envs/torch.yaml"
        threads: 1
        params:
            cfg=stage_json("import_trail"),
        shell:
            "lcsc import-trail --config-json {params.cfg:q} --threads {threads:q} --wildcards model={IMPORTED:q}"
            " --out {output.manifest:q} > {log:q} 2>&1"
