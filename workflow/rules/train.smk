rule train_dm:
    output:
        manifest=LAYOUT.manifest("dm"),
    log:
        LAYOUT.log("train_dm", "dm"),
    params:
        cfg=stage_json("train_dm"),
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=GPUS,
    shell:
        "lcsc train-dm --config-json {params.cfg:q} --threads {threads} --wildcards model=dm"
        " --out-dir {params.out_dir} 2>&1 | tee {log}"
